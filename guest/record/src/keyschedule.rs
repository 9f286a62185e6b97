//! TLS 1.3 HKDF-Expand-Label (RFC 8446 section 7.1) and the traffic key
//! derivations KeyUpdate needs, on the `hkdf` crate over `hmac`.

use alloc::{vec, vec::Vec};
use hkdf::Hkdf;
use sha2::{Sha256, Sha384};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::suite::{AeadAlgorithm, MacAlgorithm};

/// The length of every TLS 1.3 (and TLS 1.2 AEAD) record IV.
pub const IV_LEN: usize = 12;

/// HKDF-Expand-Label(secret, label, context, length) with the "tls13 " prefix.
pub fn expand_label(
    hash: MacAlgorithm,
    secret: &[u8],
    label: &[u8],
    context: &[u8],
    length: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(vec![0u8; length]);
    with_prk(hash, secret, |expand| {
        expand_label_into(expand, label, context, &mut out)
    })?;
    Ok(out)
}

/// HKDF-Expand under one PRK: `info` pieces in, `out` filled.
type Expand<'a> = dyn Fn(&[&[u8]], &mut [u8]) -> Result<()> + 'a;

/// Runs `f` with HKDF-Expand keyed by `secret`. Keying HMAC is two of the
/// four compressions of a short expansion, so derivations from one secret
/// share it.
fn with_prk(
    hash: MacAlgorithm,
    secret: &[u8],
    f: impl FnOnce(&Expand<'_>) -> Result<()>,
) -> Result<()> {
    let short = |_| Error::InvalidArgument("secret shorter than the hash");
    let long = |_| Error::InvalidArgument("hkdf output too long");
    match hash {
        MacAlgorithm::HmacSha256 => {
            let prk = Hkdf::<Sha256>::from_prk(secret).map_err(short)?;
            f(&|info, out| prk.expand_multi_info(info, out).map_err(long))
        }
        MacAlgorithm::HmacSha384 => {
            let prk = Hkdf::<Sha384>::from_prk(secret).map_err(short)?;
            f(&|info, out| prk.expand_multi_info(info, out).map_err(long))
        }
    }
}

/// HKDF-Expand-Label into `out`, whose length is the label's length.
fn expand_label_into(
    expand: &Expand<'_>,
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Result<()> {
    let full_label_len = 6 + label.len();
    if full_label_len > 255 || context.len() > 255 || out.len() > u16::MAX as usize {
        return Err(Error::InvalidArgument(
            "hkdf label, context or length too long",
        ));
    }
    let len = (out.len() as u16).to_be_bytes();
    let info: [&[u8]; 6] = [
        &len,
        &[full_label_len as u8],
        b"tls13 ",
        label,
        &[context.len() as u8],
        context,
    ];
    expand(&info, out)
}

/// A record key and its IV, both zeroized on drop.
pub type KeyAndIv = (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>);

/// The record key and IV of a TLS 1.3 traffic secret, under one keyed HMAC.
pub fn traffic_key_and_iv(aead: AeadAlgorithm, secret: &[u8]) -> Result<KeyAndIv> {
    let mut key = Zeroizing::new(vec![0u8; aead.key_len()]);
    let mut iv = Zeroizing::new(vec![0u8; IV_LEN]);
    with_prk(aead.tls13_hash(), secret, |expand| {
        expand_label_into(expand, b"key", b"", &mut key)?;
        expand_label_into(expand, b"iv", b"", &mut iv)
    })?;
    Ok((key, iv))
}

/// application_traffic_secret_N+1 (RFC 8446 section 7.2).
pub fn next_traffic_secret(aead: AeadAlgorithm, secret: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let hash = aead.tls13_hash();
    expand_label(hash, secret, b"traffic upd", b"", hash.output_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        crate::testutil::unhex(s)
    }

    /// RFC 8448 section 3: the server's application traffic secret and the
    /// TLS_AES_128_GCM_SHA256 write key and IV derived from it.
    #[test]
    fn rfc8448_server_application_key() {
        let secret = unhex(crate::vectors::RFC8448_SERVER_AP_SECRET);
        let (key, iv) = traffic_key_and_iv(AeadAlgorithm::Aes128Gcm, &secret).unwrap();
        assert_eq!(&key[..], &unhex(crate::vectors::RFC8448_SERVER_AP_KEY)[..]);
        assert_eq!(&iv[..], &unhex(crate::vectors::RFC8448_SERVER_AP_IV)[..]);
    }

    #[test]
    fn overlong_label_is_refused() {
        let secret = [0u8; 32];
        let label = [b'a'; 250];
        assert!(expand_label(MacAlgorithm::HmacSha256, &secret, &label, b"", 16).is_err());
    }
}
