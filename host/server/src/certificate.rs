//! A self-signed certificate for a server started without one, made at
//! start (the core takes identities only from files or DER).

use keyferry::error::{ConfigError, Result};
use keyferry::tls::Identity;
use rustls::pki_types::PrivateKeyDer;

/// A fresh self-signed ECDSA P-256 certificate for `names`.
pub fn self_signed(names: &[String]) -> Result<Identity> {
    self_signed_with_pem(names).map(|(identity, _)| identity)
}

/// [`self_signed`], with the certificate (not its key) as PEM, for
/// clients to pin (`curl --cacert`).
pub fn self_signed_with_pem(names: &[String]) -> Result<(Identity, String)> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| ConfigError::SelfSigned(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let pem = ck.cert.pem();
    Ok((Identity::from_der(vec![ck.cert.der().clone()], key)?, pem))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_key_belong_together() {
        let (identity, pem) = super::self_signed_with_pem(&["a.example".into()]).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        assert!(!pem.contains("PRIVATE KEY"), "the key stays out of it");
        assert_eq!(identity.chain().len(), 1);
        assert_eq!(identity.fingerprint().len(), 32 * 3 - 1);
    }
}
