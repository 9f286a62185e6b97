//! A self-signed certificate for a server started without one, made at
//! start (the core takes identities only from files or DER).

use keyferry::error::{ConfigError, Result};
use keyferry::tls::Identity;
use rustls::pki_types::PrivateKeyDer;

/// A fresh self-signed ECDSA P-256 certificate for `names`.
pub fn self_signed(names: &[String]) -> Result<Identity> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| ConfigError::SelfSigned(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    Identity::from_der(vec![ck.cert.der().clone()], key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_key_belong_together() {
        let identity = super::self_signed(&["a.example".into()]).unwrap();
        assert_eq!(identity.chain().len(), 1);
        assert_eq!(identity.fingerprint().len(), 32 * 3 - 1);
    }
}
