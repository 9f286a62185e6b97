//! `serve --acme-directory URL --acme-domain NAME…`: certificates obtained
//! and renewed from an ACME CA (RFC 8555: Let's Encrypt, or Pebble in the
//! tests) with the `instant-acme` client, without a restart.
//!
//! The challenge is TLS-ALPN-01 (RFC 8737): the CA connects to the served
//! port offering only `acme-tls/1`, and the handshake process answers with
//! a self-signed certificate that carries the key authorization's digest
//! ([`keyferry::tls::Identities::set_acme_challenge`]). So nothing but the
//! TLS port needs to be reachable, and the key of every certificate is
//! made in, and stays in, the handshake process.
//!
//! The state directory keeps the account (its key) and the certificate
//! with its key (mode 0600), so a restart serves the stored certificate at
//! once and the CA is asked again only to renew it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use keyferry::tls::{Identities, Identity};
use keyferry_server::metrics::Metrics;
use tracing::{info, warn};

/// What `serve` was told about ACME.
#[derive(Clone, Debug)]
pub(crate) struct AcmeOptions {
    /// The CA's directory URL.
    pub(crate) directory: String,
    /// The names the certificate covers (the first is its subject).
    pub(crate) domains: Vec<String>,
    /// Contact addresses (`mailto:` is added).
    pub(crate) email: Vec<String>,
    /// Where the account and the certificate are kept.
    pub(crate) state: PathBuf,
    /// A CA certificate to trust for the ACME server's own HTTPS (Pebble's
    /// test CA); the system's roots otherwise.
    pub(crate) ca: Option<PathBuf>,
    /// Renew this long before the certificate expires.
    pub(crate) renew_before: Duration,
}

/// Files in the state directory.
const ACCOUNT: &str = "account.json";
const CERTIFICATE: &str = "certificate.pem";
const KEY: &str = "certificate.key";

/// How long after a failed attempt to try again, doubling up to a day.
const FIRST_RETRY: Duration = Duration::from_secs(60);
const LAST_RETRY: Duration = Duration::from_secs(24 * 3600);

/// How often a certificate that needs nothing is looked at again.
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);

impl AcmeOptions {
    fn certificate_path(&self) -> PathBuf {
        self.state.join(CERTIFICATE)
    }

    fn key_path(&self) -> PathBuf {
        self.state.join(KEY)
    }

    /// The stored certificate, if there is one for exactly these names.
    pub(crate) fn stored(&self) -> Option<Identity> {
        let identity = Identity::from_pem_files(&self.certificate_path(), &self.key_path()).ok()?;
        let names = keyferry::tls::dns_names(identity.chain().first()?);
        let mut wanted: Vec<String> = self
            .domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        let mut have = names;
        wanted.sort();
        have.sort();
        (have == wanted).then_some(identity)
    }

    /// When `identity` should be renewed: `renew_before` ahead of its
    /// expiry (now, if it cannot be read).
    pub(crate) fn renew_at(&self, identity: &Identity) -> SystemTime {
        let expiry = identity
            .not_after()
            .and_then(|t| u64::try_from(t).ok())
            .map_or(UNIX_EPOCH, |t| UNIX_EPOCH + Duration::from_secs(t));
        expiry.checked_sub(self.renew_before).unwrap_or(UNIX_EPOCH)
    }
}

/// Keeps the served certificate obtained and renewed, for as long as the
/// server runs. `identities` serves `current` (the stored certificate, or
/// a self-signed stand-in until the first one is issued).
pub(crate) async fn keep_certificate(
    options: AcmeOptions,
    identities: Arc<Identities>,
    metrics: Arc<Metrics>,
    mut current: Option<SystemTime>,
) {
    let mut retry = FIRST_RETRY;
    loop {
        let due = current.is_none_or(|renew_at| SystemTime::now() >= renew_at);
        if !due {
            let wait = current
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .unwrap_or_default()
                .min(CHECK_EVERY);
            tokio::time::sleep(wait).await;
            continue;
        }
        match obtain(&options, &identities).await {
            Ok(identity) => {
                retry = FIRST_RETRY;
                current = Some(options.renew_at(&identity));
                let fingerprint = identity.fingerprint();
                let not_after = identity.not_after().unwrap_or_default();
                match identities.replace(std::slice::from_ref(&identity)) {
                    Ok(()) => {
                        metrics.certificates(&identities.expiries());
                        info!(
                            fingerprint = %fingerprint,
                            not_after,
                            domains = %options.domains.join(","),
                            "ACME: certificate obtained; serving it"
                        );
                    }
                    Err(e) => warn!(error = %e, "ACME: the new certificate cannot be served"),
                }
                // Not again before the next check, whatever `renew_before`
                // says: a CA that issues short certificates must not be
                // asked in a loop.
                tokio::time::sleep(CHECK_EVERY.min(Duration::from_secs(3600))).await;
            }
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    retry_in_s = retry.as_secs(),
                    "ACME: could not obtain a certificate; still serving the current one"
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(LAST_RETRY);
            }
        }
    }
}

/// One order: account, authorizations answered by TLS-ALPN-01, the key
/// and CSR made here, the chain fetched and stored.
async fn obtain(options: &AcmeOptions, identities: &Identities) -> anyhow::Result<Identity> {
    let account = account(options).await?;
    let identifiers: Vec<Identifier> = options
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("placing the order")?;
    // Challenge certificates are withdrawn however the order ends.
    let mut answered = Answered {
        identities,
        names: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.context("fetching an authorization")?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("an authorization is {other:?}"),
        }
        let mut challenge = authorization
            .challenge(ChallengeType::TlsAlpn01)
            .context("the CA offers no tls-alpn-01 challenge")?;
        let Identifier::Dns(name) = challenge.identifier().identifier.clone() else {
            bail!("the CA asks to validate something other than a DNS name");
        };
        let digest = challenge.key_authorization().digest();
        let (certificate, key) = challenge_certificate(&name, digest.as_ref())?;
        identities.set_acme_challenge(&name, certificate, key)?;
        answered.names.push(name);
        challenge
            .set_ready()
            .await
            .context("answering the challenge")?;
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
    let status = order.poll_ready(&retries).await;
    drop(answered);
    match status.context("waiting for validation")? {
        OrderStatus::Ready => {}
        other => bail!("the order is {other:?} after validation"),
    }
    let key_pem = order.finalize().await.context("finalizing the order")?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .context("fetching the certificate")?;
    store(options, &chain_pem, &key_pem)?;
    Identity::from_pem_files(&options.certificate_path(), &options.key_path())
        .context("reading the issued certificate back")
}

/// The names whose TLS-ALPN-01 challenge is being answered: withdrawn
/// when dropped, on success and on every error alike.
struct Answered<'a> {
    identities: &'a Identities,
    names: Vec<String>,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            self.identities.clear_acme_challenge(name);
        }
    }
}

/// The account, from the state directory, or made and stored there.
async fn account(options: &AcmeOptions) -> anyhow::Result<Account> {
    let builder = || match &options.ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let path = options.state.join(ACCOUNT);
    if let Ok(json) = std::fs::read(&path) {
        let credentials: AccountCredentials =
            serde_json::from_slice(&json).with_context(|| format!("reading {}", path.display()))?;
        return builder()?
            .from_credentials(credentials)
            .await
            .context("loading the ACME account");
    }
    let contacts: Vec<String> = options
        .email
        .iter()
        .map(|e| format!("mailto:{e}"))
        .collect();
    let contacts: Vec<&str> = contacts.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            options.directory.clone(),
            None,
        )
        .await
        .with_context(|| format!("creating an account at {}", options.directory))?;
    write_private(&path, serde_json::to_string(&credentials)?.as_bytes())?;
    info!(id = account.id(), "ACME: account created");
    Ok(account)
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge for
/// `name`, and its key: its critical acmeIdentifier extension holds
/// `digest` (RFC 8737 section 3).
fn challenge_certificate(
    name: &str,
    digest: &[u8],
) -> anyhow::Result<(
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let certificate = params.self_signed(&key)?;
    Ok((
        certificate.der().clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    ))
}

/// Stores the chain and its key: the key first, with mode 0600, and each
/// file written whole before it replaces the old one.
fn store(options: &AcmeOptions, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
    write_private(&options.key_path(), key_pem.as_bytes())?;
    let staging = options.certificate_path().with_extension("pem.new");
    std::fs::write(&staging, chain_pem)?;
    std::fs::rename(&staging, options.certificate_path())?;
    Ok(())
}

/// Writes `bytes` to `path` readable by this user only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let staging = path.with_extension("new");
    let _ = std::fs::remove_file(&staging);
    let mut options = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(options.write(true).create_new(true), 0o600);
    std::io::Write::write_all(
        &mut options
            .open(&staging)
            .with_context(|| format!("writing {}", staging.display()))?,
        bytes,
    )?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&staging, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_certificate_carries_the_digest_in_the_acme_identifier() {
        let digest = [7u8; 32];
        let (certificate, key) = challenge_certificate("example.test", &digest).unwrap();
        let der = certificate.as_ref();
        // id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31), critical, an OCTET
        // STRING of the 32-byte digest.
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        let at = der
            .windows(oid.len())
            .position(|w| w == oid)
            .expect("the extension");
        let rest = &der[at + oid.len()..];
        assert_eq!(&rest[..3], &[0x01, 0x01, 0xff], "critical");
        assert!(
            rest.windows(34)
                .any(|w| w[..2] == [0x04, 0x20] && w[2..] == digest)
        );
        // Served for a validator that offers acme-tls/1 alone.
        let identities = Identities::new(&[keyferry_server::certificate::self_signed(&[
            "example.test".into(),
        ])
        .unwrap()])
        .unwrap();
        identities
            .set_acme_challenge("Example.TEST", certificate, key)
            .unwrap();
    }

    #[test]
    fn renewal_is_due_renew_before_the_expiry() {
        let options = AcmeOptions {
            directory: String::new(),
            domains: vec!["a.test".into()],
            email: Vec::new(),
            state: PathBuf::new(),
            ca: None,
            renew_before: Duration::from_secs(30 * 86400),
        };
        let identity = keyferry_server::certificate::self_signed(&["a.test".into()]).unwrap();
        let expiry = UNIX_EPOCH + Duration::from_secs(identity.not_after().unwrap() as u64);
        assert_eq!(
            options.renew_at(&identity),
            expiry - Duration::from_secs(30 * 86400)
        );
    }
}
